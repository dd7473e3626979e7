import gc
import sys

# No cyclic GC until the first frame is on screen: start-up allocates a lot (textual's import, the
# stylesheet, the home screen) and its generation-2 passes would only delay the first frame.
# SlimlabApp re-enables it, with everything alive by then frozen (see SlimlabApp._warm_imports).
gc.disable()

from app.main import main  # noqa: E402

sys.exit(main())
