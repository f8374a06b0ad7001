from mirrorq.cli import main

main()
