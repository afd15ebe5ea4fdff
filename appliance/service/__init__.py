"""What ``appliance run`` is under systemd: the wiring (``runner``), the threads that keep
the stages running (``supervisor``), the status they report (``status``), and the
systemd notifications (``systemd_notify``).  Nothing here imports ``training``,
``importer`` or ``devtools``."""
