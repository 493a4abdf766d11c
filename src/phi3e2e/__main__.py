from phi3e2e.cli.entry import main

main()
