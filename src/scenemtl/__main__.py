from scenemtl.tether import tie_to_parent

tie_to_parent()  # a study's run dies with its worker (nothing for an ordinary command)

from scenemtl.cli import main  # noqa: E402

main()
