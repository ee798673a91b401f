import sys

from compressor.quiet import silence_import_noise

silence_import_noise()              # before the CLI imports transformers (and through it torchao)

from compressor.cli import main     # noqa: E402

sys.exit(main())
