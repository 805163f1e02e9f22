// The bundle the test page loads: analytics-next from npm, as a site would bundle it.
import { AnalyticsBrowser } from '@segment/analytics-next'

window.AnalyticsBrowser = AnalyticsBrowser
