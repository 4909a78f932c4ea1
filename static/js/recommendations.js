/* Evidence charts of the Recommendations pages. Reads <script type="application/json"
 * id="recommendations-data"> (Django's json_script): {"<recommendation id>": chart}, and draws
 * each into <canvas id="chart-rec-<id>">. No inline script, no data in JavaScript source, so the
 * strict CSP (script-src 'self') holds. The numbers are also in the tables and JSON on the page. */
(function () {
  "use strict";

  var MICROS_PER_USD = 1000000;
  var BLUE = "#1f6feb";
  var RED = "#d1242f";

  function usd(values) {
    return values.map(function (v) {
      return v === null ? null : v / MICROS_PER_USD;
    });
  }

  function config(chart) {
    var bar = function (label, data, color, axis) {
      return { type: "bar", label: label, data: data, backgroundColor: color, yAxisID: axis || "y" };
    };
    var datasets;
    var scales = { y: { beginAtZero: true } };
    if (chart.type === "models") {
      datasets = [
        bar("Cost per request, USD (category mix)", usd(chart.cost_micros), BLUE),
        bar("Error rate, %", chart.error_percent, RED, "y1"),
      ];
      scales.y1 = { beginAtZero: true, position: "right", grid: { drawOnChartArea: false } };
    } else if (chart.type === "reliability") {
      datasets = [
        bar("Attempt failure rate, %", chart.error_percent, RED),
        bar("p95 latency, ms", chart.p95_ms, BLUE, "y1"),
      ];
      scales.y1 = { beginAtZero: true, position: "right", grid: { drawOnChartArea: false } };
    } else if (chart.type === "daily_errors") {
      datasets = [{ type: "line", label: "Error rate, %", data: chart.error_percent, borderColor: RED, backgroundColor: RED, spanGaps: true }];
    } else if (chart.type === "daily_cost") {
      datasets = [bar("Spend, USD", usd(chart.cost_micros), BLUE)];
    } else if (chart.type === "savings") {
      datasets = [bar("Monthly saving, USD", usd(chart.cost_micros), BLUE)];
    } else {
      return null;
    }
    return {
      type: "bar",
      data: { labels: chart.labels, datasets: datasets },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        plugins: { legend: { position: "bottom" } },
        scales: scales,
      },
    };
  }

  function init() {
    var source = document.getElementById("recommendations-data");
    if (!source || typeof window.Chart === "undefined") {
      return;
    }
    var charts = JSON.parse(source.textContent);
    Object.keys(charts).forEach(function (id) {
      var canvas = document.getElementById("chart-rec-" + id);
      var settings = config(charts[id]);
      if (canvas && settings) {
        new window.Chart(canvas, settings);
      }
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
