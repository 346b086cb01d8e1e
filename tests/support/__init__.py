"""Test support: real loopback peers (sshd, an ADB device), fault injection and device stand-ins."""
