# Appended to two-nodes.py by cases.nix's twoNodesAndToplevel: node c,
# a toplevel whose init says hello and waits, booted from its closure.
with subtest("a toplevel node from its closure"):
    c.wait_for_console_text("hello from toplevel init, PID 1")
    print("c says hello from its toplevel")
