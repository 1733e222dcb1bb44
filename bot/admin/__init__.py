"""The admin: operators' accounts, sign-in, and the JSON API behind the dashboard."""
