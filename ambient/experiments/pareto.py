"""Pareto frontier of (quality distance, memorized fraction) points, and the sweep's plots."""

import os

import numpy as np

import dnnlib

#----------------------------------------------------------------------------

def pareto_front(xs, ys):
    """Indices of the points not dominated when minimising both x and y, ordered by increasing x.

    A point is dominated when another is no worse in both coordinates and better in one. Of several
    identical points only the first is kept; points with a NaN coordinate are never on the frontier.
    """
    xs = np.asarray(xs, dtype=np.float64)
    ys = np.asarray(ys, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError(f'expected two equal-length 1-D sequences, got shapes {xs.shape} and {ys.shape}')
    valid = np.flatnonzero(np.isfinite(xs) & np.isfinite(ys))
    # Sort by x, ties by y, then by position so that the first of identical points wins.
    order = valid[np.lexsort((valid, ys[valid], xs[valid]))]
    front = []
    best_y = np.inf
    for i in order:
        if ys[i] < best_y:
            front.append(int(i))
            best_y = ys[i]
    return front


def frontier_steps(xs, ys, front):
    """Staircase through the frontier points: the boundary of the region they dominate, as (x, y) arrays."""
    px = [float(xs[i]) for i in front]
    py = [float(ys[i]) for i in front]
    sx, sy = [], []
    for k, (x, y) in enumerate(zip(px, py)):
        if k > 0:
            sx.append(x)
            sy.append(py[k - 1])
        sx.append(x)
        sy.append(y)
    return np.array(sx), np.array(sy)

#----------------------------------------------------------------------------

def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path):
    """Save a figure as PNG through a temporary file, so a reader never sees a half-written image."""
    plt = pyplot()
    path = os.fspath(path)
    try:
        with dnnlib.util.atomic_output(path) as tmp:
            fig.savefig(tmp, format='png', dpi=120, bbox_inches='tight')
    finally:
        plt.close(fig)


def _groups(rows, group_key, order_key):
    """Rows split by group_key (sorted), each group ordered by order_key."""
    groups = {}
    for row in rows:
        groups.setdefault(row[group_key], []).append(row)
    return {g: sorted(groups[g], key=lambda r: r[order_key]) for g in sorted(groups)}


def _error_bars(ax, members, x_key, y_key, x_err, y_err, color):
    """Bars from (lo_key, hi_key) pairs: x_err and y_err name the keys of each row's interval ends."""
    if not x_err and not y_err:
        return
    xs = np.array([r[x_key] for r in members], dtype=np.float64)
    ys = np.array([r[y_key] for r in members], dtype=np.float64)
    span = lambda keys, centre: None if not keys else np.abs(np.array(
        [[r[keys[0]] for r in members], [r[keys[1]] for r in members]], dtype=np.float64) - centre)
    ax.errorbar(xs, ys, xerr=span(x_err, xs), yerr=span(y_err, ys), fmt='none', ecolor=color, alpha=0.6,
                elinewidth=1, capsize=2)


def plot_pareto(rows, path, x_key, y_key, group_key='sigma_tn', order_key='kimg', x_label=None, y_label=None,
                group_label=None, title=None, x_err=None, y_err=None, group_marker=None):
    """Scatter of (x, y) per row, one line per group along order_key, and the Pareto frontier of all points.

    group_marker(g): the matplotlib marker of group g (e.g. one per method family); default 'o'.

    x_err / y_err: (lo_key, hi_key) of each row's interval, drawn as error bars.
    """
    plt = pyplot()
    rows = [r for r in rows if r.get(x_key) is not None and r.get(y_key) is not None]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for g, members in _groups(rows, group_key, order_key).items():
        xs = [r[x_key] for r in members]
        ys = [r[y_key] for r in members]
        label = group_label(g) if group_label else f'{group_key}={g}'
        line, = ax.plot(xs, ys, '-', alpha=0.5, linewidth=1)
        _error_bars(ax, members, x_key, y_key, x_err, y_err, line.get_color())
        marker = group_marker(g) if group_marker else 'o'
        ax.scatter(xs[:-1], ys[:-1], s=18, color=line.get_color(), marker=marker)
        # The last snapshot of each run is drawn larger, so the direction of training is visible.
        ax.scatter(xs[-1:], ys[-1:], s=60, color=line.get_color(), edgecolors='black', label=label, zorder=3, marker=marker)
    if rows:
        xs = np.array([r[x_key] for r in rows], dtype=np.float64)
        ys = np.array([r[y_key] for r in rows], dtype=np.float64)
        front = pareto_front(xs, ys)
        fx, fy = frontier_steps(xs, ys, front)
        ax.plot(fx, fy, '--', color='black', linewidth=1.5, label='Pareto frontier', zorder=2)
    ax.set_xlabel(x_label or x_key)
    ax.set_ylabel(y_label or y_key)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_curves(rows, path, x_key, y_specs, group_key='sigma_tn', x_label=None, group_label=None, title=None,
                baselines=None, baseline_label='reference', bands=None):
    """One panel per (y_key, y_label) in y_specs: y against x_key, a line per group; baselines[y_key] as a dashed level.

    bands[y_key] = (lo_key, hi_key): each row's interval, shaded around the line.
    """
    plt = pyplot()
    fig, axes = plt.subplots(1, len(y_specs), figsize=(4.5 * len(y_specs), 3.8), squeeze=False)
    groups = _groups(rows, group_key, x_key)
    for ax, (y_key, y_label) in zip(axes[0], y_specs):
        for g, members in groups.items():
            pts = [(r[x_key], r[y_key]) for r in members if r.get(y_key) is not None]
            if pts:
                label = group_label(g) if group_label else f'{group_key}={g}'
                line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], 'o-', markersize=3, label=label)
                lo_hi = (bands or {}).get(y_key)
                if lo_hi:
                    inside = [r for r in members if r.get(lo_hi[0]) is not None]
                    ax.fill_between([r[x_key] for r in inside], [r[lo_hi[0]] for r in inside],
                                    [r[lo_hi[1]] for r in inside], color=line.get_color(), alpha=0.15, linewidth=0)
        if baselines and baselines.get(y_key) is not None:
            ax.axhline(baselines[y_key], color='gray', linestyle='--', linewidth=1, label=baseline_label)
        ax.set_xlabel(x_label or x_key)
        ax.set_ylabel(y_label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)

#----------------------------------------------------------------------------
