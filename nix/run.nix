# A derivation whose builder runs a shell script with nixspawn on $PATH,
# in a Nix `uid-range` sandbox (Nix 2.20 or newer with
# `system-features = uid-range` and `auto-allocate-uids`): the script's
# output is the build log and $out/log, and the build fails when it does.
#
#   import ./nix/run.nix { nixspawn = <dir with bin/{nixspawn,nixspawnctl,busybox} and lib/>; }
#     { name = "hello"; script = "nixspawn --pipe -D $tree /bin/true"; env.tree = someTree; }
{ nixspawn, system ? builtins.currentSystem }:
{ name, script, env ? { } }:
derivation ({
  inherit name system nixspawn;
  builder = "${nixspawn}/bin/busybox";
  args = [ "sh" "-e" ./builder.sh ];
  script = script;
  passAsFile = [ "script" ];
  requiredSystemFeatures = [ "uid-range" ];
} // env)
