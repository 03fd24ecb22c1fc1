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
        nixspawn = pkgs.rustPlatform.buildRustPackage {
          pname = "nixspawn";
          version = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).workspace.package.version;
          src = pkgs.lib.cleanSource ./.;
          cargoLock.lockFile = ./Cargo.lock;
          # The test suite boots containers as root; it runs outside the
          # build sandbox (integration/test.sh), not here.
          doCheck = false;
          nativeBuildInputs = [ pkgs.installShellFiles ];
          # Man pages and completions, generated from the clap definitions
          # by nixspawnctl's hidden generate-docs verb.
          postInstall = ''
            $out/bin/nixspawnctl generate-docs docs
            installManPage docs/man/*.1
            installShellCompletion --cmd nixspawn \
              --bash docs/completions/nixspawn.bash \
              --zsh docs/completions/_nixspawn \
              --fish docs/completions/nixspawn.fish
            installShellCompletion --cmd nixspawnctl \
              --bash docs/completions/nixspawnctl.bash \
              --zsh docs/completions/_nixspawnctl \
              --fish docs/completions/nixspawnctl.fish
          '';
          meta = {
            description = "Container launcher for NixOS toplevels and systemd trees, systemd-nspawn compatible";
            license = with pkgs.lib.licenses; [ mit asl20 ];
            platforms = pkgs.lib.platforms.linux;
            mainProgram = "nixspawn";
          };
        };
        default = nixspawn;
      });

      # lib.<system>.runTest { name; nodes; testScript; }: a nixspawn-test
      # run as a derivation (nix/test.nix), built on any builder with the
      # `uid-range` system feature; logs and JUnit in $out.
      lib = forAll (pkgs:
        let
          nixspawn = self.packages.${pkgs.stdenv.hostPlatform.system}.nixspawn;
          # nix/test.nix's bundle: Nix-built binaries need no lib/ of their own.
          bundle = pkgs.runCommand "nixspawn-bundle" { } ''
            mkdir -p $out/bin $out/lib
            ln -s ${nixspawn}/bin/* $out/bin/
            ln -s ${pkgs.pkgsStatic.busybox}/bin/busybox $out/bin/busybox
          '';
        in
        {
          runTest = import ./nix/test.nix {
            nixspawn = bundle;
            python3 = pkgs.python3;
            system = pkgs.stdenv.hostPlatform.system;
          };
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
