from bilevel_cli.cli import main

main()
