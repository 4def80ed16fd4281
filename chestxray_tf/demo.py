"""`make demo`: the main job end to end on the built-in synthetic data set."""


def main():
    print("no demo yet: the end-to-end demo lands with the evaluation issue")


if __name__ == "__main__":
    main()
