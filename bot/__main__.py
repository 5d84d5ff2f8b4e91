# First, before discord.py, torch and the model load: a stop asked for meanwhile exits 0.
from retrieval.runtime import exit_now, exit_on_signals

exit_on_signals()

from bot.cli import main  # noqa: E402

# Closed in order by now: the interpreter's own teardown would only wait (threads still decoding,
# torch's) or abort (a model still loading on its thread).
exit_now(main())
