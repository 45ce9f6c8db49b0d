"""The search spec: its schema (`schema`), the take-home preference (`take_home`), and `mmmo validate`'s checks before anything loads (`validate`)."""
