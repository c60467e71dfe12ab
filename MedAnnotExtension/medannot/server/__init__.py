"""The MedAnnot task-queue server: users, projects, cases, leased tasks, submissions and the audit trail.

It imports the core (``medannot``); the core never imports it.
"""
