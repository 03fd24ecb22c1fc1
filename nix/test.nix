# A multi-node nixspawn test as a derivation, the counterpart of nixpkgs'
# runNixOSTest: the builder runs nixspawn-test in a Nix `uid-range`
# sandbox, the logs and a JUnit report go to $out, and the build fails
# when the test does. The description format is nixspawn-test's JSON
# (README, "Multi-node tests"), written here as a Nix attribute set.
#
#   import ./nix/test.nix { inherit nixspawn python3; } {
#     name = "ping";
#     nodes.a.tree = debianTree;        # a store path; copied into the build
#     nodes.b.toplevel = nixosSystem;   # closure-only store
#     testScript = ''
#       start_all()
#       a.wait_for_unit("multi-user.target")
#       a.succeed("ping -c1 b")
#     '';
#   }
#
# `nixspawn` is a directory with bin/{nixspawn,nixspawnctl,nixspawn-test,
# busybox} and lib/ (the loader and libraries they link: see
# integration/nix-sandbox/run.sh), `python3` a store path with
# bin/python3 (the driver's interpreter).
#
# Status: written against the test-runner branch's description format;
# not yet run (nixspawn-test was not in main when this was written).
{ nixspawn, python3, system ? builtins.currentSystem }:
{ name, nodes, testScript, globalTimeout ? null }:
let
  # Trees from the store are owned by an id the build cannot map, so
  # systemd in them cannot write its state: the builder copies each into
  # the build directory (reference: obstacle 8) and the description names
  # the copy.
  treeOf = n: node: if node ? tree then "/build/trees/${n}" else null;
  description = {
    inherit name;
    nodes = builtins.mapAttrs (n: node:
      (builtins.removeAttrs node [ "tree" ])
      // (if node ? tree then { tree = treeOf n node; } else { })) nodes;
    test_script = testScript;
  } // (if globalTimeout == null then { } else { global_timeout = globalTimeout; });
  trees = builtins.concatStringsSep " " (builtins.attrValues (builtins.mapAttrs
    (n: node: if node ? tree then "${n}=${node.tree}" else "") nodes));
in
derivation {
  inherit name system nixspawn python3 trees;
  builder = "${nixspawn}/bin/busybox";
  args = [ "sh" "-e" ./test-builder.sh ];
  description = builtins.toJSON description;
  passAsFile = [ "description" ];
  requiredSystemFeatures = [ "uid-range" ];
}
