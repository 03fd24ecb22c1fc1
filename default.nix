# nixspawn for Nix without flakes (flake.nix gives the same):
#   nix-build -A nixspawn
#   (import ./path/to/nixspawn { }).runTest { name; nodes; testScript; }
#   (import ./path/to/nixspawn { }).runInSandbox { name; script; }
# runTest is nix/test.nix (a nixspawn-test as a derivation, the counterpart
# of nixpkgs' runNixOSTest), runInSandbox nix/run.nix (a script with
# nixspawn on $PATH); both build on a builder with the `uid-range` system
# feature.
{ pkgs ? import <nixpkgs> { } }:
let
  system = pkgs.stdenv.hostPlatform.system;
in
rec {
  nixspawn = pkgs.callPackage ./nix/package.nix { };
  bundle = pkgs.callPackage ./nix/bundle.nix { inherit nixspawn; };
  runTest = import ./nix/test.nix { nixspawn = bundle; inherit (pkgs) python3; inherit system; };
  runInSandbox = import ./nix/run.nix { nixspawn = bundle; inherit system; };
}
