"""The dashboard: queues and functions live, dead letters (replay, purge), a call by its id, pause and resume, in
the browser. Served by the gateway under /dashboard/ (JETQUEUE_DASHBOARD) or by `jetqueue dashboard`.
Modules: app.py (routes, actions through the CLI's operations), guard.py (sign-in, sessions, CSRF), views.py (what
the pages show), rates.py (calls per second), command.py (`jetqueue dashboard`). User docs: docs/dashboard.md."""
