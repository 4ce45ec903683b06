
import os as _os

# the services that store personal data refuse to start without it; the benches' processes inherit it
_os.environ.setdefault("LEADSTREAM_PRIVACY_SECRET", "bench-privacy-secret")
