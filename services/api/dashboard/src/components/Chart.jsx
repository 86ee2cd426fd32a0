// A live line chart (uPlot): re-renders as points arrive, resizes with its box.
import { useEffect, useRef } from "preact/hooks";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

export function Chart({ title, points, color, format = (v) => v, testId }) {
  const box = useRef(null);
  const plot = useRef(null);

  useEffect(() => {
    const element = box.current; // refs are cleared before cleanup runs; keep the element itself
    const width = () => Math.max(200, element.clientWidth);
    plot.current = new uPlot(
      {
        width: width(),
        height: 180,
        legend: { show: false },
        cursor: { show: true, points: { size: 6 } },
        scales: { x: { time: false } },
        axes: [
          { label: "step", stroke: "#64748b", grid: { stroke: "#e2e8f0" } },
          { stroke: "#64748b", grid: { stroke: "#e2e8f0" }, size: 60, space: 24, values: (u, vals) => vals.map(format) },
        ],
        series: [{}, { label: title, stroke: color, width: 2, points: { show: true, size: 5, fill: color } }],
      },
      [[], []],
      element,
    );
    const observer = new ResizeObserver(() => plot.current.setSize({ width: width(), height: 180 }));
    observer.observe(element);
    return () => {
      observer.disconnect();
      plot.current.destroy();
    };
  }, []);

  useEffect(() => {
    plot.current?.setData([points.map((p) => p[0]), points.map((p) => p[1])]);
  }, [points]);

  return (
    <figure class="chart" data-testid={testId} data-points={points.length}>
      <figcaption>
        {title} <span class="muted">({points.length} points)</span>
      </figcaption>
      <div ref={box} class="chart-box" role="img" aria-label={`${title} chart, ${points.length} points`} />
    </figure>
  );
}
