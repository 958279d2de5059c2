"""Small leaf utilities every subsystem may use: atomic writes, locks, audio, failure hints."""
