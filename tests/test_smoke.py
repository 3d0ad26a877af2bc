import skate


def test_task_roundtrip(ray_start):
    @skate.remote
    def f(x):
        return x + 1

    assert skate.get(f.remote(1)) == 2
