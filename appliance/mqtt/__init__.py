"""The wire contract, once: paho clients set up one way (``client``), every topic
(``topics``), and every payload in and out (``payloads``)."""
