from scenemtl.cli import main

main()
