from kmrl_sync.cli.main import run

if __name__ == "__main__":  # worker processes (forkserver/spawn) import this module too
    run()
