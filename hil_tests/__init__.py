"""Hardware-in-the-loop tests: the agent on emulated arm64, behind links that
come and go, against a ground daemon that crashes.  Run with
``python -m pytest hil_tests`` as root; see README.md."""
