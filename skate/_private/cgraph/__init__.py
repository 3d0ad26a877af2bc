"""Compiled graphs: channels between processes and the actors' execution loops."""
