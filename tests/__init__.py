"""pthfmt's tests: a package, so that ``tests.support`` imports the same way from every
test module whether pytest runs from the repository root or on one directory."""
