import sys

# First, before discord.py, torch and the model load: a stop asked for meanwhile exits 0.
from retrieval.signals import exit_on_signals

exit_on_signals()

from bot.cli import main  # noqa: E402

sys.exit(main())
