from dbrollback.cli import main

main()
