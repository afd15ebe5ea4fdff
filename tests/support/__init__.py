"""Helpers of the test suites: the service as a child process, publishers, fault tools."""
