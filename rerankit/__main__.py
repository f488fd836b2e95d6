from rerankit.cli import main

main()
