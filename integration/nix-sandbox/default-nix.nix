# The repository's default.nix (bound at /repo by the test) evaluated with
# a stand-in for nixpkgs that hands out run.sh's bundles instead of
# building the package: its runTest and runInSandbox must make working
# derivations of nix/test.nix and nix/run.nix. Built by tests/nix_sandbox.rs.
let
  nixspawn = builtins.path { path = /nixspawn; name = "nixspawn"; };
  python3 = builtins.path { path = /nixspawn-python3; name = "python3"; };
  bb = "${nixspawn}/bin/busybox";
  pkgs = {
    stdenv.hostPlatform.system = builtins.currentSystem;
    inherit python3;
    # nix/bundle.nix is called with the package; nix/package.nix is not
    # built here (no nixpkgs), its stand-in is only passed along.
    callPackage = f: args: if args ? nixspawn then nixspawn else "nixspawn-package-stand-in";
  };
  top = import /repo/default.nix { inherit pkgs; };
  toplevel = derivation {
    name = "nixos-system-hello";
    system = builtins.currentSystem;
    builder = bb;
    args = [ "sh" "-c" ''
      ${bb} mkdir $out
      printf '#!${bb} sh\ntrap "exit 0" TERM 37 38\necho hello via default.nix\nwhile :; do ${bb} sleep 0.2; done\n' >$out/init
      ${bb} chmod +x $out/init
    '' ];
  };
in
{
  test = top.runTest {
    name = "via-default-nix";
    machinePrefix = "s15-dn-";
    globalTimeout = 60;
    nodes.m.toplevel = toplevel;
    testScript = ''
      start_all()
      machine.wait_for_console_text("hello via default.nix")
      print("DEFAULT-NIX-TEST-OK")
    '';
  };
  script = top.runInSandbox {
    name = "via-default-nix-script";
    script = "nixspawn --version && echo DEFAULT-NIX-SCRIPT-OK";
  };
}
