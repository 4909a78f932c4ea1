/* Overview charts. Reads the page's data from <script type="application/json" id="overview-data">
 * (Django's json_script): no inline script, no data interpolated into JavaScript, so a strict CSP
 * (script-src 'self') holds. Every chart has a data table next to it for screen readers and for
 * when this script does not run. */
(function () {
  "use strict";

  var MICROS_PER_USD = 1000000;
  var COLORS = {
    blue: "#1f6feb",
    red: "#d1242f",
    green: "#1a7f37",
    orange: "#bc4c00",
    purple: "#8250df",
    grey: "#6e7781",
  };

  function usd(micros) {
    return micros === null ? null : micros / MICROS_PER_USD;
  }

  function line(label, data, color, extra) {
    var dataset = {
      label: label,
      data: data,
      borderColor: color,
      backgroundColor: color,
      borderWidth: 2,
      pointRadius: data.length > 48 ? 0 : 2,
      spanGaps: true,
      tension: 0.2,
    };
    return Object.assign(dataset, extra || {});
  }

  function draw(id, config) {
    var canvas = document.getElementById(id);
    if (!canvas) {
      return null;
    }
    config.options = Object.assign(
      {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        interaction: { mode: "index", intersect: false },
        plugins: { legend: { position: "bottom" } },
      },
      config.options || {}
    );
    return new window.Chart(canvas, config);
  }

  function modelChart(canvasId, models, metric) {
    var select = document.getElementById("model-metric");
    var label = select ? select.options[select.selectedIndex].text : metric;
    var values = models[metric].map(function (value) {
      return metric === "cost_micros" ? usd(value) : value;
    });
    return draw(canvasId, {
      type: "bar",
      data: {
        labels: models.labels,
        datasets: [{ label: label, data: values, backgroundColor: COLORS.blue }],
      },
      options: { indexAxis: "y", plugins: { legend: { display: false } } },
    });
  }

  function init() {
    var source = document.getElementById("overview-data");
    if (!source || typeof window.Chart === "undefined") {
      return;
    }
    var data = JSON.parse(source.textContent);
    var labels = data.labels;

    draw("chart-requests", {
      type: "line",
      data: {
        labels: labels,
        datasets: [
          line("Requests", data.requests, COLORS.blue),
          line("Errors", data.errors, COLORS.red),
        ],
      },
      options: { scales: { y: { beginAtZero: true } } },
    });
    draw("chart-spend", {
      type: "bar",
      data: {
        labels: labels,
        datasets: [
          { label: "Charged", data: data.charged_micros.map(usd), backgroundColor: COLORS.green },
          {
            label: "Cost incl. own keys",
            data: data.cost_micros.map(usd),
            backgroundColor: COLORS.grey,
          },
        ],
      },
      options: { scales: { y: { beginAtZero: true } } },
    });
    draw("chart-tokens", {
      type: "bar",
      data: {
        labels: labels,
        datasets: [
          { label: "Prompt", data: data.prompt_tokens, backgroundColor: COLORS.purple },
          { label: "Completion", data: data.completion_tokens, backgroundColor: COLORS.orange },
        ],
      },
      options: { scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } } },
    });
    draw("chart-latency", {
      type: "line",
      data: {
        labels: labels,
        datasets: [
          line("p50 (ms)", data.p50_ms, COLORS.blue),
          line("p95 (ms)", data.p95_ms, COLORS.purple),
          line("Error rate (%)", data.error_percent, COLORS.red, {
            yAxisID: "errors",
            borderDash: [4, 4],
          }),
        ],
      },
      options: {
        scales: {
          y: { beginAtZero: true, title: { display: true, text: "ms" } },
          errors: {
            position: "right",
            beginAtZero: true,
            suggestedMax: 5,
            grid: { drawOnChartArea: false },
            title: { display: true, text: "%" },
          },
        },
      },
    });

    var select = document.getElementById("model-metric");
    var chart = modelChart("chart-models", data.models, select ? select.value : "requests");
    if (select) {
      select.addEventListener("change", function () {
        if (chart) {
          chart.destroy();
        }
        chart = modelChart("chart-models", data.models, select.value);
      });
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
