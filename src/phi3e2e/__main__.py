from phi3e2e.cli.app import main

main()
