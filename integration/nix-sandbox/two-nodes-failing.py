# nixspawn-test script of cases.nix's twoNodesFailing: the succeed of a
# missing file fails, which must fail the build with that line in the log.
start_all()
a.wait_for_unit("multi-user.target")
a.succeed("getent hosts b")
a.succeed("test -e /FAILING-LINE-s15-two")
print("not reached")
