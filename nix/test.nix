# A multi-node nixspawn test as a derivation, the counterpart of nixpkgs'
# runNixOSTest: the builder runs nixspawn-test in a Nix `uid-range`
# sandbox, the logs and a JUnit report go to $out, and the build fails
# when the test does (with the script's failing line in the build log).
# The description format is nixspawn-test's JSON (README, "Multi-node
# tests"), written here as a Nix attribute set.
#
#   import ./nix/test.nix { inherit nixspawn python3; } {
#     name = "ping";
#     nodes.a.tree = debianTree;        # a store path; copied into the build
#     nodes.b.toplevel = nixosSystem;   # closure-only store
#     testScript = ''
#       start_all()
#       a.wait_for_unit("multi-user.target")
#       a.succeed("getent hosts b")
#     '';
#   }
#
# `nixspawn` is a directory with bin/{nixspawn,nixspawnctl,nixspawn-test,
# busybox} and, for glibc-linked binaries not built by Nix, lib/ (the
# loader and the libraries they link; integration/nix-sandbox/run.sh makes
# one). `python3` is a store path with bin/python3 and its standard
# library: nixpkgs' python3, or a bundle with lib/ like nixspawn's.
{ nixspawn, python3, system ? builtins.currentSystem }:
{ name
, nodes
, testScript
, globalTimeout ? null
, machinePrefix ? null
}:
let
  # Trees from the store are owned by an id the build cannot map, so
  # systemd in them could not write its state: the builder copies each
  # into the build directory (nix-sandbox.md, obstacle 8) and the
  # description names the copy. Ephemeral nodes (the default) boot an
  # overlay of it, so nodes of one tree share one copy; a persistent
  # node gets its own.
  copyOf = n: node:
    if node.ephemeral or true
    then "/build/trees/${builtins.baseNameOf node.tree}"
    else "/build/trees/node-${n}";
  # A toplevel's closure, for --closure-file: the sandbox has no Nix
  # database or nix-store to ask (obstacle 6); exportReferencesGraph
  # writes it to graph-NODE, the builder keeps its paths in closure-NODE.
  toplevelNodes = builtins.filter (n: nodes.${n} ? toplevel) (builtins.attrNames nodes);
  closureOption = n: "--closure-file=/build/closure-${n}";
  description = {
    inherit name;
    nodes = builtins.mapAttrs
      (n: node: node
        // (if node ? tree then { tree = copyOf n node; } else { })
        // (if node ? toplevel
        then { options = (node.options or [ ]) ++ [ (closureOption n) ]; }
        else { }))
      nodes;
    test_script = testScript;
  }
  // (if globalTimeout == null then { } else { global_timeout = globalTimeout; })
  // (if machinePrefix == null then { } else { machine_prefix = machinePrefix; });
  # DEST=SOURCE per copy, each copy once (keyed by DEST; a name may not
  # carry the source's store path context, the value keeps it).
  copies = builtins.attrValues (builtins.listToAttrs (builtins.concatLists
    (builtins.attrValues (builtins.mapAttrs
      (n: node:
        if node ? tree
        then [{
          name = builtins.unsafeDiscardStringContext (copyOf n node);
          value = "${copyOf n node}=${node.tree}";
        }]
        else [ ])
      nodes))));
in
derivation {
  inherit name system nixspawn python3;
  builder = "${nixspawn}/bin/busybox";
  args = [ "sh" "-e" ./test-builder.sh ];
  copies = builtins.concatStringsSep " " copies;
  toplevels = builtins.concatStringsSep " " toplevelNodes;
  exportReferencesGraph = builtins.concatLists
    (map (n: [ "graph-${n}" nodes.${n}.toplevel ]) toplevelNodes);
  description = builtins.toJSON description;
  passAsFile = [ "description" ];
  requiredSystemFeatures = [ "uid-range" ];
}
