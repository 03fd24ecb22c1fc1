{
  description = "nixspawn: boot NixOS and other systemd guests in containers, speaking systemd-nspawn's command line";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAll (pkgs: rec {
        nixspawn = pkgs.callPackage ./nix/package.nix { };
        default = nixspawn;
      });

      # lib.<system>.runTest { name; nodes; testScript; }: a nixspawn-test
      # run as a derivation (nix/test.nix), built on any builder with the
      # `uid-range` system feature; logs and JUnit in $out. runInSandbox
      # { name; script; }: a shell script with nixspawn on $PATH
      # (nix/run.nix). The same as default.nix's, with nixpkgs' python3.
      lib = forAll (pkgs:
        let
          system = pkgs.stdenv.hostPlatform.system;
          bundle = pkgs.callPackage ./nix/bundle.nix {
            nixspawn = self.packages.${system}.nixspawn;
          };
        in
        {
          runTest = import ./nix/test.nix {
            nixspawn = bundle;
            inherit (pkgs) python3;
            inherit system;
          };
          runInSandbox = import ./nix/run.nix { nixspawn = bundle; inherit system; };
        });

      devShells = forAll (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.nixspawn ];
          packages = with pkgs; [
            cargo rustc clippy rustfmt cargo-nextest
            # fixtures and side-by-side benchmarks
            debootstrap systemd bubblewrap hyperfine busybox python3
          ];
        };
      });
    };
}
