# Derivations whose builder runs nixspawn, built by tests/nix_sandbox.rs
# with integration/nix-sandbox/run.sh (which puts the nixspawn bundle at
# /nixspawn, the Python bundle at /nixspawn-python3 and, for `boot` and
# the two-node tests, a Debian tree at /guest).
let
  nixspawn = builtins.path { path = /nixspawn; name = "nixspawn"; };
  run = import /nixspawn/nix/run.nix { inherit nixspawn; };
  # Imported only by the cases that use them (evaluation is lazy).
  python3 = builtins.path { path = /nixspawn-python3; name = "python3"; };
  runTest = import /nixspawn/nix/test.nix { inherit nixspawn python3; };
  guest = builtins.path {
    path = /guest;
    name = "debian-guest";
    # Device nodes and sockets cannot be store contents.
    filter = path: type: type != "unknown";
  };
  bb = "${nixspawn}/bin/busybox";
  # A busybox tree made in the build directory, for command payloads.
  mkTree = ''
    mkdir -p /build/t/bin /build/t/usr /build/t/etc
    cp ${bb} /build/t/bin/busybox
    for a in sh cat echo ls id grep mount; do ln -s busybox /build/t/bin/$a; done
  '';
  # A NixOS-shaped toplevel built here: init is a busybox script.
  toplevel = derivation {
    name = "nixos-system-sandboxed";
    system = builtins.currentSystem;
    builder = bb;
    args = [ "sh" "-c" ''
      ${bb} mkdir $out
      printf '#!${bb} sh\necho hello from toplevel init, PID $$\n${bb} ls /nix/store\n' >$out/init
      ${bb} chmod +x $out/init
    '' ];
  };
  # For nixspawn-test: an init that says hello on the console and stays
  # until the halt or poweroff signal (SIGRTMIN+3 or +4: 37, 38) or SIGTERM.
  staysToplevel = derivation {
    name = "nixos-system-stays";
    system = builtins.currentSystem;
    builder = bb;
    args = [ "sh" "-c" ''
      ${bb} mkdir $out
      printf '#!${bb} sh\ntrap "exit 0" TERM 37 38\necho hello from toplevel init, PID $$\nwhile :; do ${bb} sleep 0.2; done\n' >$out/init
      ${bb} chmod +x $out/init
    '' ];
  };
in
{
  # A command as PID 1 with nixspawn's defaults (read-only console on the
  # build's pty): the lines reach the log whole.
  command = run {
    name = "nixspawn-command";
    script = mkTree + ''
      nixspawn -M s15-cmd -D /build/t /bin/sh -c 'echo hello from PID $$; echo uid_map $(cat /proc/self/uid_map); cat /proc/self/cgroup; echo devnull >/dev/null && echo dev ok; grep -E "^(NoNewPrivs|Seccomp):" /proc/self/status'
      echo after the guest
    '';
  };

  # The same guest, failing: the build fails with its line in the log.
  failing = run {
    name = "nixspawn-failing";
    script = mkTree + ''
      nixspawn -M s15-fail -D /build/t /bin/sh -c 'echo about to fail; echo FAILING-LINE-s15 >&2; exit 3'
      echo not reached
    '';
  };

  # -U: only identity fits in the builder's 65536 ids; pick is refused
  # with that said.
  userns = run {
    name = "nixspawn-userns";
    script = mkTree + ''
      nixspawn -M s15-idy -U --private-users=identity -D /build/t /bin/sh -c 'echo identity uid_map $(cat /proc/self/uid_map)'
      if nixspawn -M s15-pick --private-users=pick -D /build/t /bin/true 2>err; then echo pick worked; exit 1; fi
      echo "pick refused: $(cat err)"
    '';
  };

  # A closure-only --toplevel, the closure from exportReferencesGraph
  # (no Nix database or nix-store in the sandbox).
  toplevel = run {
    name = "nixspawn-toplevel";
    env = { inherit toplevel; exportReferencesGraph = [ "graph" toplevel ]; };
    script = ''
      # closureInfo's store-paths: every path named in the graph.
      grep '^/nix/store/' /build/graph | sort -u >/build/store-paths
      nixspawn -M s15-top --toplevel=$toplevel --closure-file=/build/store-paths
    '';
  };

  # A systemd boot of a Debian tree imported into the store, copied into
  # the build directory (store files are owned by an id unmapped here).
  boot = run {
    name = "nixspawn-boot";
    env = { inherit guest; };
    script = ''
      cp -a $guest /build/g
      chown -R 0:0 /build/g
      chmod 755 /build/g
      nixspawn -M s15-boot -D /build/g -b >/build/console.log 2>&1 &
      launcher=$!
      nixspawnctl wait-ready s15-boot --timeout 60
      echo "state: $(nixspawnctl exec s15-boot systemctl is-system-running)"
      nixspawnctl exec s15-boot cat /proc/1/comm
      nixspawnctl poweroff s15-boot
      wait $launcher
      echo "launcher exit: $?"
      grep -c . /build/console.log
    '';
  };

  # nix/test.nix: two nodes of one Debian tree from the store on vlan 1;
  # a reaches b by name (ARP, /etc/hosts, TCP to a socket-activated
  # server), and b reaches a the same way (bench.sh times this one).
  twoNodes = runTest {
    name = "two-nodes";
    machinePrefix = "s15-two-";
    globalTimeout = 300;
    nodes.a.tree = guest;
    nodes.b.tree = guest;
    testScript = builtins.readFile ./two-nodes.py;
  };

  # The same with a third node, a NixOS-shaped toplevel built in this
  # store and booted from its closure (what the CI test builds).
  twoNodesAndToplevel = runTest {
    name = "two-nodes-and-toplevel";
    machinePrefix = "s15-two-";
    globalTimeout = 300;
    nodes.a.tree = guest;
    nodes.b.tree = guest;
    nodes.c.toplevel = staysToplevel;
    testScript = builtins.readFile ./two-nodes.py + builtins.readFile ./toplevel-node.py;
  };

  # The same, failing in its script: the build fails with the line.
  twoNodesFailing = runTest {
    name = "two-nodes-failing";
    machinePrefix = "s15-twof-";
    globalTimeout = 300;
    nodes.a.tree = guest;
    nodes.b.tree = guest;
    testScript = builtins.readFile ./two-nodes-failing.py;
  };
}
