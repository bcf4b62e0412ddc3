from vistune.cli import main

main()
