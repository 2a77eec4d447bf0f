from secretfs.cli import main

main()
