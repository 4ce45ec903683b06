"""The data protection rights on the pipeline service (API-key scope ``privacy``): access
(an export of everything the pipeline store holds about a person) and erasure (the
coordinator of the erasure saga on ``privacy.requests``: docs/privacy.md)."""
