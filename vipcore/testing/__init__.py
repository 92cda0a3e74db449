"""Fakes that users of vipcore also want in their own tests (the test API server, ...)."""
