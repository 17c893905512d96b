"""Conversation logic, platform-neutral: an incoming event in, replies out. No SQL here."""
