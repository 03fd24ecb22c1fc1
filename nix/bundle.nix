# The `nixspawn` argument of nix/run.nix and nix/test.nix from nixpkgs:
# the package's binaries and a static busybox (the builders' shell) in
# bin/. Nix-built binaries carry their own library paths, so lib/ stays
# empty (integration/nix-sandbox/run.sh makes the bundle of a host build,
# with the loader and libraries in lib/).
{ runCommand, pkgsStatic, nixspawn }:
runCommand "nixspawn-bundle" { } ''
  mkdir -p $out/bin $out/lib
  ln -s ${nixspawn}/bin/* $out/bin/
  ln -s ${pkgsStatic.busybox}/bin/busybox $out/bin/busybox
''
