import os

# Keep DVC offline and quiet in every test, whatever the caller's environment.
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
