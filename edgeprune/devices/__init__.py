"""Device profiles, transports (local/ssh/adb) and the bench stage."""
