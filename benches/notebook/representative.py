# A representative notebook for the router benchmark: 20 cells, most of them
# plain Python, some numpy / pandas / matplotlib (cells 11, 12, 13, 14, 15, 19).
# %%
import math, json, statistics
# %%
data = [math.sin(i / 10) for i in range(200)]
# %%
mean = statistics.mean(data); mean
# %%
config = {"name": "demo", "n": len(data)}; json.dumps(config)
# %%
def scale(xs, k):
    return [x * k for x in xs]
# %%
scaled = scale(data, 3); max(scaled)
# %%
words = "the quick brown fox jumps over the lazy dog".split(); sorted(words)
# %%
from collections import Counter; Counter("mississippi").most_common(2)
# %%
total = sum(range(10_000)); total
# %%
print(f"{len(data)} points, mean {mean:.3f}")
# %%
import numpy as np; arr = np.array(scaled); float(arr.std())
# %%
arr.shape
# %%
import pandas as pd; df = pd.DataFrame({"x": range(len(data)), "y": data}); df.describe()
# %%
float(df["y"].rolling(10).mean().iloc[-1])
# %%
import matplotlib.pyplot as plt; plt.plot(df["x"], df["y"]); plt.show()
# %%
len(words)
# %%
{w: len(w) for w in words}
# %%
total * 2
# %%
df.shape
# %%
"done"
