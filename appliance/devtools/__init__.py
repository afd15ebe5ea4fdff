"""Tools for people working on or trying the appliance, never imported by the service:
the demo, the simulated line, a private mosquitto launcher, and the benchmarks
(``bench``)."""
