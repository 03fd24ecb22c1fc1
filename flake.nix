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
