from phi3e2e.cli import main

main()
